"""The seeded files of the built-in networks, reduced to fingerprints that a later version
of the code must reproduce byte for byte (`tests/quanta/test_builtin_unchanged.py`).

The earlier code is run on the same machine, from the repository's history: oneDNN picks
its kernels by CPU, so the same code writes other float bytes on another processor, and
fingerprints stored from one machine would not hold on the next. Run as a script with
another version of `quanta` first on the path, this module writes the fingerprints that
version makes (`python tests/support/builtin_fingerprint.py OUT`); `of_commit` does so.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

#: The last commit before user networks were added (the built-in networks' code then).
BEFORE_OWN_NETWORKS = "1fd54d1effef4853f6815bbfa6fa6add56dbcec9"
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


def of_commit(commit: str, repo: Path, folder: Path) -> dict[str, Any]:
    """The fingerprints the library of `commit` (its `quanta` and `quanta_spec`, taken from
    the repository's history) writes on this machine, in a fresh process."""
    code = folder / "code"
    code.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", commit, "quanta", "quanta_spec"],
                             capture_output=True, check=True, timeout=120).stdout
    subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True, timeout=120)
    out = folder / "fingerprints.json"
    env = {**os.environ, "PYTHONPATH": str(code), "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run([sys.executable, __file__, str(out)], cwd=folder, env=env, check=True,
                   capture_output=True, timeout=1200)
    made = json.loads(out.read_text())
    # the earlier library was the one imported, not today's (which would compare to itself)
    assert Path(made["library"]).resolve().is_relative_to(code.resolve()), made["library"]
    return made["fingerprints"]


if __name__ == "__main__":
    import tempfile

    import quanta

    with tempfile.TemporaryDirectory() as folder:
        made = {"library": quanta.__file__, "fingerprints": fingerprints(Path(folder))}
        Path(sys.argv[1]).write_text(json.dumps(made, indent=1) + "\n")
