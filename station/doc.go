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
// # Protocol v2: epochs, sequence numbers and ACKs
//
// The client numbers frames 1, 2, 3, … (or from WithFirstSeq) in the order
// Send accepted them, under an epoch: a random non-zero number per client,
// or the one given with WithEpoch (Epoch returns it). By default it speaks
// protocol v2: every connection opens with a HELLO carrying the epoch, the
// oldest frame it still holds and an optional name (WithName), and the
// client waits, within the dial timeout, for the gateway's WELCOME, which
// says the next sequence number the gateway wants. Frames below it are
// already stored: the client drops them and resends from there. ACKs are
// sequence numbers of the epoch, the same on every connection: ACK a means
// every frame up to a is stored. The client answers each HEARTBEAT with a
// PONG, from which the gateway measures the round trip.
//
// A gateway that answers the HELLO with CLOSE(5) speaks v1 only: the client
// logs it once, reconnects at once speaking v1 and stays on v1
// (ProtocolVersion says which). WithProtocol forces v1, or v2 without the
// fallback. In v1 the gateway counts ACKs per connection, from 0, and the
// client maps each session's counts onto its own numbering. Either way
// Acked only grows, across reconnects too.
//
// # Reconnects, GOAWAY and delivery
//
// When a session ends for a reason that retrying can fix (the gateway shut
// down or restarted, was busy, the network dropped, the gateway went silent
// for the dead-gateway timeout, another session of the same station took
// over), the client reconnects to the same address with jittered
// exponential back-off and resends, in order, every frame not acknowledged
// (in v2, from the WELCOME's next). Nothing handed to Send is lost while the
// process lives.
//
// A gateway that shuts down gracefully sends GOAWAY: the client stops
// writing, half-closes, receives the final ACK covering everything the
// gateway accepted, then reconnects and resends only the rest. A rolling
// restart therefore neither loses nor duplicates a frame. After an abrupt
// end (a crash, a reset) a v2 client resumes where the stream says, so each
// frame of its epoch is stored exactly once; a v1 client sends again the
// frames the gateway stored but could not acknowledge: at least once, in
// order within each session.
//
// Refusals that retrying cannot fix (frame too large, unsupported control
// frame, not authorized) stop the client, as does ErrEpochConflict: Send,
// WaitAcked, Close and Err return the error, a *CloseError for a refusal,
// which matches its reason's sentinel with errors.Is. CLOSE(9) (superseded)
// is not one of them; it counts as a failed attempt for the back-off.
//
// See docs/station.md for the protocol's client side in prose and the
// meridian station and meridian bench commands.
package station
