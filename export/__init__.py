"""Export stage: prefill / coprocessor / decode ONNX graphs with explicit kv-cache I/O and TensorRT engines.

Needs the ``[export]`` extra.
"""
