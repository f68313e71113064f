"""The hypernetworks of the controller: preferences and budget to branching (edge) and to BatchNorm deltas (weight)."""
