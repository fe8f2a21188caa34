"""Models: loading (hub, embedded, random shapes), placement, precision, compiling, export."""
