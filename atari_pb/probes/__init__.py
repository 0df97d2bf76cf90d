"""Representation probing (AtariARI): which RAM bytes hold each game's state (`annotations`) and the probe
datasets of frame stacks labelled with those bytes (`data`)."""
