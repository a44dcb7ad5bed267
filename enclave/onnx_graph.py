"""Rewrites of an exported ONNX decoder graph, made in memory when the onnxruntime backend loads it
(the artifact on disk, hashed and pinned, is never changed).

``sampled_logits_only``: the exported graph applies the output layer to every position, so a
512-token prefill of SmolLM2 computes 512 x 49,152 logits (100 MB, and about a tenth of the
prefill's arithmetic) of which the sampler reads one row. After the rewrite the graph takes
``sampled_index`` (batch,), the position of each row whose logits are wanted, and returns logits
of shape (batch, 1, vocab): the output layer runs once per row.
"""

from __future__ import annotations

from pathlib import Path

SAMPLED_INDEX = "sampled_index"


def kv_names(decoder: dict, side: str) -> list[str]:
    """The graph's KV cache inputs (``side`` "past") or outputs ("present"), key then value of each
    layer in turn, from genai_config.json's ``decoder`` section."""
    names = decoder["inputs" if side == "past" else "outputs"]
    keys = (f"{side}_key_names", f"{side}_value_names")
    return [names[k] % i for i in range(decoder["num_hidden_layers"]) for k in keys]


def load_graph(path: Path):
    """The decoder graph without its weights (they stay in the external data file beside it)."""
    import onnx

    return onnx.load(str(path), load_external_data=False)


def session_from_graph(model, folder: Path, options, providers: list[str]):
    """An InferenceSession over a rewritten graph whose external weights are in ``folder``."""
    import onnxruntime as ort

    # ORT reads the external initializers relative to this folder when the model comes from memory.
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(folder))
    return ort.InferenceSession(model.SerializeToString(), options, providers=providers)


def sampled_logits_only(model, logits: str = "logits"):
    """Make the output layer read one position per row, chosen by the new input ``sampled_index``.

    Args:
        model: the decoder ``onnx.ModelProto`` (changed in place).
        logits: the name of the graph's logits output.

    Returns:
        The same model: hidden (B, T, H) -> GatherND(sampled_index, batch_dims=1) -> (B, 1, H) ->
        the output layer -> logits (B, 1, V).

    Raises:
        ValueError: no node produces ``logits`` (not a decoder graph from the ONNX export).
    """
    from onnx import TensorProto, helper

    graph = model.graph
    head = next((n for n in graph.node if logits in n.output), None)
    if head is None:
        raise ValueError(f"no node of the graph produces {logits!r}")
    hidden = head.input[0]
    axes = helper.make_tensor("sampled_index/axes", TensorProto.INT64, [1], [1])
    graph.initializer.append(axes)
    column, picked, picked_3d = "sampled_index/column", "sampled_index/hidden", "sampled_index/hidden_3d"
    nodes = [
        helper.make_node("Unsqueeze", [SAMPLED_INDEX, axes.name], [column], name="sampled_index/Unsqueeze"),
        # (B, T, H) gathered at (B, 1) -> (B, H): each row's own position
        helper.make_node("GatherND", [hidden, column], [picked], name="sampled_index/GatherND", batch_dims=1),
        helper.make_node("Unsqueeze", [picked, axes.name], [picked_3d], name="sampled_index/Unsqueeze3d"),
    ]
    head.input[0] = picked_3d
    at = list(graph.node).index(head)
    for offset, node in enumerate(nodes):
        graph.node.insert(at + offset, node)
    graph.input.append(helper.make_tensor_value_info(SAMPLED_INDEX, TensorProto.INT64, ["batch_size"]))
    out = next(o for o in graph.output if o.name == logits)
    dims = out.type.tensor_type.shape.dim
    if len(dims) == 3:
        dims[1].ClearField("dim_param")
        dims[1].dim_value = 1
    return model
