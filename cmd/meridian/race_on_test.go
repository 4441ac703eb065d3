//go:build race

package main

// raceEnabled: the race detector multiplies the memory of every goroutine
// and allocation, so memory bounds are checked loosely under it.
const raceEnabled = true
