"""Data sources: the synthetic facts corpus, hand-written eval files, and general-text streams."""
