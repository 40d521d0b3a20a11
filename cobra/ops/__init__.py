"""Pure maths of the stages after training, no files and no models (SPEC "Seeds", "Masks").

`cams` (seed maths: normalisation, fusion of M_cnn and M_tran, background thresholds, the
threshold sweep), `crf` (denseCRF on hard or soft maps), `confidence` (IRN's IR labels:
confident fg / bg / unknown, and their quality), `affinity` (pixel-pair labels and the boundary
network's affinity loss) and `random_walk` (transition from a boundary map, the walk itself and
the two mask rules).
"""
