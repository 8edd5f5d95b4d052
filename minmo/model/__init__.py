"""The MinMo model (arXiv 2501.06282), one module per component, one config dataclass each.

voice_encoder (SenseVoice encoder, funasr) -> input_projector -> llm (Qwen2 + LoRA, speech
embeddings spliced between <|startofspeech|> and <|endofspeech|>) -> output_projector -> voice_lm
(CosyVoice 2's Qwen2 voice token LM, 5:15 interleave) ; duplex (full-duplex predictor over the LLM
hidden states). `minmo.model.minmo` assembles them with the per-stage freezing recipes.
"""
