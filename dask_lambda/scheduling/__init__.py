"""How a graph runs on Lambda: preparing it, choosing batches, the dispatch loop and
the attempt policy. Nothing here invokes Lambda itself; the loop is handed a backend.
"""
