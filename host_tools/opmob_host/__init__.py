"""OpMob host tools: the ``opmob`` command for technicians and CI."""
