"""Exports for other tools. `to_mlx_lm.export_mlx_lm` writes a folder mlx-lm loads as a
custom model: mlx_lm_kssm.py is its model file, hf_tokenizer.py writes its tokenizer files,
model_card.py its README. The mlx-kssm format itself is `mlx_kssm.io.export_model`.

Nothing here imports mlx-lm until an export asks for it (the optional `mlx-lm` extra)."""
