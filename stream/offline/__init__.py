"""Offline evaluation: prequential replay of a click log through the core
beside baseline recommenders (:mod:`stream.offline.evaluate`), and the
settings search built on it (:mod:`stream.offline.tune`). Uses the core, no
broker; the core does not use it."""
