"""Model families, by name, and which family a model spec is (without importing torch).

A preset names the family it needs (`[presets.NAME] family`); a worker renders the presets of the family of
the model it loaded, and says so in the store while it runs (or loads, or restarts), so that the bot can
refuse a job that no worker would take.
"""

from __future__ import annotations

import json
from pathlib import Path

I2VGEN_XL = "i2vgen-xl"
LTX_VIDEO = "ltx-video"
FAMILIES = (I2VGEN_XL, LTX_VIDEO)

LICENCES = {
    I2VGEN_XL: "I2VGen-XL: research and non-commercial use only (its authors' licence)",
    LTX_VIDEO: "LTX-Video: the LTX-Video open weights licence (commercial use allowed within its terms)",
}

# A worker's family counts as served for this long after its last heartbeat: one that is restarting, or
# loading its model, still serves it.
SERVED_FOR_S = 300.0

_LTX_PIPELINES = ("LTXPipeline", "LTXImageToVideoPipeline", "LTXConditionPipeline")
_BUILT_IN = {"tiny": I2VGEN_XL, "random-full": I2VGEN_XL, "tiny-ltx": LTX_VIDEO, "random-full-ltx": LTX_VIDEO}


def family_of_model(spec: str) -> str:
    """The family of a model spec: a built-in name, a folder (its model_index.json says), or a hub id (LTX
    repositories carry "ltx" in their name, as Lightricks/LTX-Video-0.9.8-13B-distilled does)."""
    if spec in _BUILT_IN:
        return _BUILT_IN[spec]
    index = Path(spec).expanduser() / "model_index.json"
    if index.is_file():
        try:
            name = json.loads(index.read_text()).get("_class_name", "")
        except (OSError, ValueError):
            name = ""
        return LTX_VIDEO if name in _LTX_PIPELINES else I2VGEN_XL
    return LTX_VIDEO if "ltx" in spec.rsplit("/", 1)[-1].lower() else I2VGEN_XL


def served_key(family: str) -> str:
    """The store meta key holding when a worker of this family last said it was alive."""
    return f"served:{family}"
