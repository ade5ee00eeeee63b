"""Training: everything before step one (`prepare`, with defaults from `recipe`), the loop over
accelerate (`train`), validation and early stopping (`validation`), measured memory and the
micro-batch layout (`memory`), FSDP2 and launchers (`distributed`), and `plan`, which runs the
same preparation and layout without training.

Imports: the core, `data`, `models` and `inference`."""
