"""HuggingFace ``transformers`` interop: per-family name tables (see ``family`` for how to add one).

    from modaloom.interop.hf import hf_to_modaloom, modaloom_to_hf
    model = hf_to_modaloom("path/to/hf_folder")       # or a transformers model object
    modaloom_to_hf(model, "path/to/out")              # loads with AutoModel...from_pretrained
"""

from modaloom.interop.hf.convert import HFConversion, convert_from_hf, hf_to_modaloom, modaloom_to_hf
from modaloom.interop.hf.family import HFFamily, get_family, register_family, supported_model_types
from modaloom.interop.hf.mapping import (
    IDENTITY,
    RESHAPE,
    TRANSPOSE,
    Lambda,
    Mapping,
    Reshape,
    Rule,
    Split,
    Transform,
    Transpose,
)

__all__ = [
    "HFConversion", "HFFamily", "IDENTITY", "Lambda", "Mapping", "RESHAPE", "Reshape", "Rule", "Split",
    "TRANSPOSE", "Transform", "Transpose", "convert_from_hf", "get_family", "hf_to_modaloom", "modaloom_to_hf",
    "register_family", "supported_model_types",
]
