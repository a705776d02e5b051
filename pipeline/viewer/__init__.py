"""A local web viewer: the slide as a Deep Zoom pyramid with the model's overlays and the
slide's call and IHC differential beside it (``fascicle view``)."""
