"""Independent float64 NumPy references of what the library computes (imported by the tests)."""
