"""The ovseg Flower app: thin entry points over ``ovseg.integrations.flower``."""
