"""A time segment of a video in seconds (start, end), as LSMDC/ActivityNet-style annotations give them.
Its own module so that annotation code does not import the decoder (and torch) just for the type."""

Segment = tuple[float, float]
