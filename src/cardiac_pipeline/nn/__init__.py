"""Torch modules: encoders behind one seam (``nn.encoders``)."""
