"""The checkpoint database's upkeep: a thread's older checkpoints pruned, so that the file stops growing however long an experiment runs."""

from __future__ import annotations

from langgraph.checkpoint.sqlite import SqliteSaver


def prune_checkpoints(saver: SqliteSaver, thread_id: str, keep: int) -> int:
    """Delete the thread's checkpoints older than its latest `keep`, with their writes, in one transaction; how many were deleted.

    The latest `keep` are counted in the root namespace; a subgraph's checkpoints (any other namespace) go when they
    are older than the oldest root checkpoint kept. The latest checkpoint and its pending writes, all that get_state
    and a resume read, are never touched, and nor is anything newer, a subgraph's step in flight included. `keep=0`
    keeps everything. SQLite reuses the freed pages, so the file stays at the size of `keep` checkpoints.

    Checkpoint ids are uuid6, whose text begins with the time they were made (strictly increasing within a process):
    text order is time order, which is how SqliteSaver itself finds the latest. A graph whose channels are
    DeltaChannels rebuilds them from older checkpoints' writes and must not be pruned this way; ours has none.
    """
    if keep <= 0:
        return 0
    with saver.cursor() as cursor:  # the saver's lock: no checkpoint is written meanwhile; it commits on leaving
        cursor.execute(
            "SELECT checkpoint_id FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = '' ORDER BY checkpoint_id DESC LIMIT 1 OFFSET ?",
            (thread_id, keep - 1),
        )
        oldest_kept = cursor.fetchone()
        if oldest_kept is None:
            return 0
        try:
            if not saver.conn.in_transaction:
                cursor.execute("BEGIN")
            cursor.execute("DELETE FROM writes WHERE thread_id = ? AND checkpoint_id < ?", (thread_id, oldest_kept[0]))
            cursor.execute("DELETE FROM checkpoints WHERE thread_id = ? AND checkpoint_id < ?", (thread_id, oldest_kept[0]))
            deleted = cursor.rowcount
        except BaseException:
            saver.conn.rollback()  # all or nothing: the cursor's commit on leaving then finds nothing to commit
            raise
    return deleted
