"""Weight-only quantization to the GPTQ checkpoint format (GPTQModel does the math and the packing)."""
