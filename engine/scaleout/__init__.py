"""Scale-out on Ray: dataset samples and large generate jobs on actors that hold the loaded model.

Ray is an optional extra (`pip install "gfm4d[ray]"`) and is imported only here, only when a
run asks for it (`--ray`); everything else runs in one process without it.

Actors, not Ray Data: a sample is one self-contained job whose result is files written
straight into the dataset folder plus a small manifest record, and a region of a large canvas
depends on the regions finished before it. Plain actors keep the model loaded across jobs, let
the driver schedule dependency waves and record each finished sample exactly once, and need only
Ray core (Ray Data's `map_batches` streams tabular batches, would add pyarrow/pandas, and has no
notion of jobs that must wait for other jobs).
"""
