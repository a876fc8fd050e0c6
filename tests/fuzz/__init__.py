"""The fuzz campaign: bad arguments for every `dgnerf` command, damaged copies of every file the project reads,
and bad inputs for the ops, each checked for: no traceback, no crash, no hang, a non-zero exit, one line naming
the flag or file as the user typed it, and nothing written.

    world.py     the shared tiny dataset, checkpoints, run, codes, media every case starts from
    cases.py     the seeded case generator (families cli, files, ops)
    worker.py    runs a slice of cases in one process (in-process CLI via dgnerf.cli.main), one JSON line each
    campaign.py  runs families through workers (restarting them after a crash or a hang), sums up
    test_fuzz.py the quick slice (normal suite) and the long run (`pytest -m long`, scripts/fuzz.sh)
"""
