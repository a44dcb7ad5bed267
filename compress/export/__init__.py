"""Serving artifacts: ONNX with KV cache (ONNX Runtime GenAI) and vLLM directories."""
