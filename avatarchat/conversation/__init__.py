"""One conversation between a user and the avatar, apart from any transport (see core.py).

    core.py        Conversation: the turn lifecycle, barge-in, history; the one owner of the playout
    states.py      its states, the moves allowed between them, and what the client is told
    outbox.py      a turn's events on their way out, cut by type on an interruption
    utterances.py  two utterances of one stream joined (a question the user paused in)
    measures.py    the per-turn measures a conversation adds (voice to voice, text to voice)
"""
