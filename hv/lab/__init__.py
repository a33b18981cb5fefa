"""Labs: several VMs and switches described in a file or in code (the network issue fills
this in).
"""
