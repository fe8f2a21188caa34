"""Models: hub loading, the embedded model, random shapes, anatomy, placement, export, precision."""
