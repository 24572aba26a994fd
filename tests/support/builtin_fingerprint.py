"""The seeded files of the built-in networks, reduced to fingerprints that a later version
of the code must reproduce byte for byte (`tests/quanta/test_builtin_unchanged.py`).

Run as a script with another version of `quanta` first on the path, it prints the
fingerprints that version writes: `tests/quanta/data/builtin_fingerprints.json` was made so by the
code before user networks were added (`python tests/support/builtin_fingerprint.py OUT`).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

#: Every case: a source trained, then transfers that touch each path of the built-in
#: networks (one layer with a witness, all at once tested every epoch, the source in
#: inference mode with shuffled batches).
SOURCE = ["-s", "digits", "--nb_of_epochs", "2", "--nb_of_samples", "96",
          "--width_multiplier", "0.0625", "--seed", "1"]
COMMON = ["-s", "digits", "-t", "digits", "--nb_of_target_samples", "96",
          "--nb_of_target_epochs", "2", "--width_multiplier", "0.0625", "--seed", "7"]
TRANSFERS = {
    "layer3_witness": ["-l", "3", "--witness"],
    "all_tested": ["-l", "-1", "--test_every_epoch"],
    "layer6_inference_shuffled": ["-l", "6", "--source_inference_mode", "--shuffle"],
}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fingerprint_file(path: Path) -> str:
    """JSONL and JSON byte for byte; a saved model by its config (the save date left out)
    and every weight's bytes in order."""
    if path.suffix != ".keras":
        return _digest(path.read_bytes())
    import keras

    import quanta  # noqa: F401 - registers the QUANTA layer

    model = keras.saving.load_model(path, compile=False)
    weights = b"".join(keras.ops.convert_to_numpy(w).tobytes() for w in model.weights)
    return _digest(json.dumps(model.get_config(), sort_keys=True, default=str).encode()
                   + weights)


def fingerprints(root: Path) -> dict[str, Any]:
    from quanta import cli, train_source

    out: dict[str, Any] = {}
    assert train_source.main([*SOURCE, "-o", str(root / "source")]) == 0
    weights = root / "source" / "digits_training" / "source.weights.h5"
    for name, extra in TRANSFERS.items():
        folder = root / name
        assert cli.main([*COMMON, "-sw", str(weights), *extra, "-o", str(folder)]) == 0
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "tensorboard" not in path.parts:
                out[f"{name}/{path.relative_to(folder).as_posix()}"] = fingerprint_file(path)
    return out


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        Path(sys.argv[1]).write_text(json.dumps(fingerprints(Path(folder)), indent=1) + "\n")
