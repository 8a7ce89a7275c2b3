"""A metric network's weight file: read by the safe reader, checked against the network, loaded.

A file may hold more than a network uses (torch-fidelity's Inception file has the whole 1008-class
network; torchvision's SqueezeNet file its classifier): only the network's own keys are taken, and each
must be there with the network's shape.
"""
from pathlib import Path

import numpy as np

from common.score.errors import ScoreFileError
from common.sd.weights import WeightFileError, load_state_dict, read_weights


def read_network_file(path, what: str, fix: str, read=read_weights) -> dict:
    """{name: array} of `path` by `read`; ScoreFileError naming the file, `what` it is and the `fix` if it
    is missing or does not read."""
    path = Path(path)
    if not path.is_file():
        raise ScoreFileError(f"{path}: {what} not found; {fix}")
    try:
        return read(path)
    except WeightFileError as e:
        raise ScoreFileError(f"{what}: {e}; or {fix}") from None


def load_network(module, path, what: str, fix: str, state=None, adjust=lambda name, array: array) -> None:
    """Fill `module` from `path` (its keys = the module's names), or from `state` already read from it
    (`read_network_file`); ScoreFileError naming the file, `what` it is and the `fix` if the file is
    missing, unreadable or lacks or misshapes a tensor. `adjust(name, array)` gives the value the network
    takes (a cast, say)."""
    path = Path(path)
    state = read_network_file(path, what, fix) if state is None else state
    wanted = {name: tuple(var.shape) for name, var in module.state_dict().items()}
    missing = [name for name in wanted if name not in state]
    if missing:
        raise ScoreFileError(f"{path}: {what} is missing {len(missing)} tensors the network needs "
                             f"(e.g. {', '.join(missing[:3])}): not this network's file; {fix}")
    for name, shape in wanted.items():
        if tuple(state[name].shape) != shape or not np.issubdtype(state[name].dtype, np.floating):
            raise ScoreFileError(f"{path}: {what} tensor {name} is {state[name].dtype} {tuple(state[name].shape)}, "
                                 f"expected float {shape}: not this network's file; {fix}")
    load_state_dict(module, {name: adjust(name, state[name]) for name in wanted}, path)
