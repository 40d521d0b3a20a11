"""Pure maths of the stages after training, no files and no models (SPEC "Seeds", "Masks"):
`cams`, `crf`, `confidence` (IR labels), `affinity` and `random_walk`."""
