"""The corpora of translation: reading text files strictly, the synthetic task with gold alignments,
and the IWSLT'14 and Multi30k preparations (``varattn prepare``)."""
