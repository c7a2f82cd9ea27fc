"""Sessions: the signed-in state of a browser, sealed in a store (see ``manager``)."""
