"""Measurement: what bnlab records about a network besides its accuracy. The probes, fired on
their schedules during training, and the end-of-run interventions with frozen weights
(shifted test sets, reordered running statistics). Built on the engine only."""
