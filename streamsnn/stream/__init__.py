"""The streaming job, one module per stage in data-flow order.

    messages   the decision and status schema (bus, log and tests take it from here)
    sources    replay of files and sample folders, DV network streams, cameras
    queue      the bounded queue behind each source (block or drop-oldest, counted)
    frames     per-stream preprocessing and binning, one thread for all streams
    scheduler  batched inference over streams: one membrane slot per stream, cutoff per stream
    job        wires sources, queues, frame stage, scheduler, bus and log (``Pipeline``)
    config     pipeline definitions (TOML) and their validation
    bus        ZeroMQ publisher, subscriber, broker; CurveZMQ keys
    log        the HDF5 decision log

Nothing is imported here, so ``import streamsnn.stream.messages`` stays cheap.
"""
