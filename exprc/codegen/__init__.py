"""Source generation, one renderer per target."""
