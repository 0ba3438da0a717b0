"""Exporting a model folder. `exporter.py` is the library call behind `mlx-kssm export`
(commands.py): `export_model` writes the self-contained mlx-kssm folder every format starts
from, `export` picks the format. `to_mlx_lm.export_mlx_lm` writes a folder mlx-lm loads as a
custom model: model_file.py writes its model file (mlx_lm_kssm.py with mlx_kssm's own code in
place of its imports), hf_tokenizer.py writes its tokenizer files,
model_card.py its README.

Nothing here imports mlx-lm until an export asks for it (the optional `mlx-lm` extra)."""
