"""An example blinded reader study on the phantom with three simulated readers (``study.py``)."""
