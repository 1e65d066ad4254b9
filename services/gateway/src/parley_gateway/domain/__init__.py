"""The gateway's decisions at the edge, with no protobuf, no gRPC and no I/O (time is passed in):
whether a call is admitted (`admission`), where a plain call goes and whether it may be sent
again (`routes`), which waiting sends go to messaging together (`sending`). The servicer and
its helpers translate protobuf and do the calls around them."""
