"""Writing a synthetic set chunk by chunk (``medsynth generate``): sample, screen with the release gate,
write DICOM / NIfTI / PNG files and their manifest 1,000 images (or a memory-sized chunk) at a time,
resumable after any chunk.

Memory stays flat in the set's size: one chunk of images is held at a time, and the manifest is joined
from per-chunk parts at the end.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

from medsynth.errors import MedsynthError


#: chunk manifests of an unfinished generate (inside --out; joined into manifest.csv at the end)
PARTS = ".generate-parts"


def write_synthetic_chunks(out: Path, cfg, model, *, count: int, class_: int | None, seed: int, fmt: str,
                           truncation: float | None, info, gate=None, resumable=None, spacing=None):
    """Sample, gate and write ``count`` images chunk by chunk, then join the chunks' manifests.

    Chunk ``k`` (images ``k * chunk ..``) draws its latents from a generator seeded with
    :func:`medsynth.data.writers.chunk_seed` ``(seed, k)``; classes are ``--class`` or ``i % num_classes`` of
    the image's index ``i`` in the set. After each chunk: its files, its manifest part
    (``OUT/.generate-parts/chunk_KKKKK.csv``) and then the progress record (chunks done, the gate's counts
    per chunk) are written; a continued generate starts at the first chunk not recorded. At the end
    ``manifest.csv`` is joined from the parts (atomic) and ``release_gate.json`` totals every chunk.

    Args:
        out: the output folder (files, ``manifest.csv``, ``release_gate.json``).
        cfg: the run's resolved config (``data.size``, ``spatial_dims``, ``modality``, ``ct_window``).
        model: the trained variant (``sample``, ``num_classes``).
        count: images to write; ``class_``: one class for all (``None``: ``i % num_classes``).
        seed: the set's seed; ``fmt``: ``dcm`` / ``nii`` / ``png``; ``truncation``: latent truncation.
        info: the :class:`medsynth.data.writers.SyntheticInfo` stamped into every file.
        gate: a fitted :class:`medsynth.metrics.gate.ReleaseGate` (``None``: no screening).
        resumable: the :class:`medsynth.runs.ResumableOutput` of ``--continue`` (``None``: not resumable).
        spacing: pixel spacing (mm) written into the files (``None``: the writer's default).

    Returns:
        ``(images written, the gate's total tally or None, number of chunks)``.

    Raises:
        MedsynthError: ``--continue`` with a gate other than the interrupted run's.
    """
    from dataclasses import replace

    import torch

    from medsynth.data.writers import (
        chunk_seed,
        concat_manifests,
        generate_chunk_size,
        new_series_uids,
        sample_in_batches,
        synthetic_file_names,
        write_csv,
        write_synthetic_files,
    )
    from medsynth.progress import Progress

    d = cfg.data
    shape = (1,) + (int(d.size),) * int(d.spatial_dims)
    chunk = generate_chunk_size(shape)
    n_chunks = -(-count // chunk)
    state = dict(resumable.progress) if resumable is not None else {}
    done = int(state.get("chunks_done", 0))
    uids = state.get("uids") or new_series_uids()
    tallies = list(state.get("tallies", []))[:done]  # the gate's counts of the chunks done (a snapshot per save)
    state["tallies"] = list(tallies)
    gate_id = None
    if gate is not None:
        rec = gate.record(total_tally())
        gate_id = {"thresholds": rec["thresholds"], "encoder": (rec.get("encoder") or {}).get("fingerprint")}
        if done and state.get("gate") != gate_id:
            raise MedsynthError("--continue", f"the release gate fitted now ({gate_id}) is not the one the interrupted "
                                            f"generate used ({state.get('gate')}): the run's training data or gate "
                                            "encoder changed; start afresh with --overwrite")
    parts = out / PARTS
    with Progress("generate", count, "images", initial=min(done * chunk, count)) as bar:
        for k in range(done, n_chunks):
            start, n = k * chunk, min(chunk, count - k * chunk)
            g = torch.Generator().manual_seed(chunk_seed(seed, k))
            idx = torch.arange(start, start + n)
            labels = None
            if model.num_classes > 0:
                labels = torch.full((n,), class_, dtype=torch.long) if class_ is not None else idx % model.num_classes
            sample = functools.partial(sample_in_batches, model, generator=g, truncation=truncation, progress=False)
            info_k = info
            if gate is not None:
                from medsynth.metrics.gate import gated_sample

                images, tally = gated_sample(lambda m, lab: sample(m, labels=lab), n, gate, labels=labels)
                line = gate.summary_line(tally)
                if n_chunks > 1:
                    line += f" (chunk {k + 1} of {n_chunks}; release_gate.json: all chunks)"
                info_k = replace(info, gate=line)
                tallies.append({"screened": tally.screened, "removed": dict(tally.removed), "rounds": tally.rounds})
            else:
                images = sample(n, labels=labels)
            lab = labels if labels is not None else torch.full((n,), -1, dtype=torch.long)
            part = parts / f"chunk_{k:05d}.csv"
            if resumable is not None:  # listed before written: --overwrite removes them even after a SIGKILL
                resumable.save({**state, "uids": uids}, planned=[
                    *synthetic_file_names(info, start, n, count, fmt=fmt, modality=d.modality,
                                          three_d=len(shape) == 4), part.relative_to(out).as_posix()])
            df = write_synthetic_files(out, images, lab, modality=d.modality, fmt=fmt, info=info_k,
                                       ct_window=d.ct_window, start=start, total=count, uids=uids, progress=False,
                                       spacing=spacing)
            write_csv(part, df)
            del images, df
            state = {"chunks_done": k + 1, "chunks": n_chunks, "chunk": chunk, "uids": uids, "tallies": list(tallies),
                     "gate": gate_id}
            if resumable is not None:
                resumable.save(state)
            bar.update(n)
    concat_manifests([parts / f"chunk_{k:05d}.csv" for k in range(n_chunks)], out / "manifest.csv")
    total = None
    if gate is not None:
        from medsynth.metrics.gate import write_gate_record

        total = total_tally(tallies)
        rec = gate.record(total)
        if n_chunks > 1:
            rec["chunks"] = {"n": n_chunks, "images_per_chunk": chunk,
                             "rule": "each chunk sampled and gated on its own (latents seeded by (seed, chunk)); "
                                     "the counts above total all chunks, rounds included"}
        write_gate_record(out, rec)
    shutil.rmtree(parts)
    return count, total, n_chunks


def total_tally(tallies: list[dict] | None = None):
    """The gate's counts summed over chunks (``tallies``: per chunk ``{"screened", "removed", "rounds"}``)."""
    from medsynth.metrics.gate import GateTally

    total = GateTally()
    for t in tallies or []:
        total.screened += int(t["screened"])
        total.rounds += int(t["rounds"])
        for space, v in t["removed"].items():
            total.removed[space] = total.removed.get(space, 0) + int(v)
    return total
