package main

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"
)

// A session shorter than the board's sampling interval is listed too: the
// gateway reports each session's end, with its final counters, to the
// board. (A one-shot `meridian station` of two lines is such a session.)
func TestBoardListsAShortSession(t *testing.T) {
	c := start(t, serveArgs(t.TempDir(), "--sink", "discard")...)
	addr, httpAddr, _ := c.addrs()
	payloads := [][]byte{[]byte("hello"), []byte("world")}
	if acked, err := sendFrames(addr, payloads, nil); err != nil || acked != 2 {
		t.Fatalf("sent 2 frames: acked %d, %v", acked, err)
	}
	type station struct {
		Station string `json:"station"`
		State   string `json:"state"`
		Frames  uint64 `json:"frames"`
	}
	deadline := time.Now().Add(wait)
	for {
		var v struct {
			Stations []station `json:"stations"`
		}
		resp, err := http.Get("http://" + httpAddr + "/api/board")
		if err != nil {
			t.Fatal(err)
		}
		err = json.NewDecoder(resp.Body).Decode(&v)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if len(v.Stations) == 1 && v.Stations[0].State == "disconnected" && v.Stations[0].Frames == 2 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("board lists %+v, want the ended session with its 2 frames", v.Stations)
		}
		time.Sleep(20 * time.Millisecond) // polling a child process's endpoint
	}
}
