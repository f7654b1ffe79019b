"""The only modules that import Ray or Flower: each adapts the framework-free core to one framework."""
