"""Exports for other tools. `to_mlx_lm.export_mlx_lm` writes a folder mlx-lm loads as a
custom model: model_file.py writes its model file (mlx_lm_kssm.py with mlx_kssm's own code in
place of its imports), hf_tokenizer.py writes its tokenizer files,
model_card.py its README. The mlx-kssm format itself is `mlx_kssm.io.export_model`.

Nothing here imports mlx-lm until an export asks for it (the optional `mlx-lm` extra)."""
