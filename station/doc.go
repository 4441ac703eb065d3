// Package station is the client side of Meridian's station protocol: what a
// ground station links to stream telemetry frames to a gateway without
// losing any.
//
// Dial connects; Send queues a copy of each payload and returns; the client
// writes frames in order in the background, batching them into few socket
// writes, and keeps every frame until the gateway acknowledges it. The
// gateway acknowledges a frame once its sink has made it durable, so Acked
// (and WaitAcked, and Close) tell the station what it may forget.
//
// # Sequence numbers and ACKs
//
// The client numbers frames from 1 in the order Send accepted them. The
// gateway counts ACKs per connection, from 0; the client maps each session's
// counts onto its own numbering, so Acked only grows, across reconnects too.
//
// # Reconnects, GOAWAY and at-least-once delivery
//
// When a session ends for a reason that retrying can fix (the gateway shut
// down or restarted, was busy, the network dropped, the gateway went silent
// for the dead-gateway timeout), the client reconnects to the same address
// with jittered exponential back-off and resends, in order, every frame not
// acknowledged. Nothing handed to Send is lost while the process lives.
//
// A gateway that shuts down gracefully sends GOAWAY: the client stops
// writing, half-closes, receives the final ACK covering everything the
// gateway accepted, then reconnects and resends only the rest. A rolling
// restart therefore neither loses nor duplicates a frame. After an abrupt
// end (a crash, a reset) the frames the gateway stored but could not
// acknowledge are sent again: delivery is at least once, in order within
// each session.
//
// Refusals that retrying cannot fix (frame too large, unsupported control
// frame, not authorized) stop the client: Send, WaitAcked, Close and Err
// return a *CloseError, which matches its reason's sentinel with errors.Is.
//
// See docs/station.md for the protocol's client side in prose and the
// meridian station and meridian bench commands.
package station
