"""Optimisers over flat parameter vectors, free of Pyro."""
