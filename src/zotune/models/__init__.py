"""Models: loading (hub, embedded, random shapes), anatomy, placement, precision, export."""
