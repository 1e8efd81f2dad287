"""``rqa generate``: question/answer training data from a document database, through any generator backend.

``plan`` fixes which passages are asked about and in which split; ``prompting`` holds the prompts and reads
questions back; ``filters`` says what is left out and why; ``run`` generates and admits passages in plan order;
``worklog`` makes it resumable; ``output`` writes the files; ``job`` ties them together for the command.
"""
