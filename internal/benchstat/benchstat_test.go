package benchstat

import (
	"sync"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{0.5, 50 * time.Millisecond}, {0.99, 99 * time.Millisecond}, {1, 100 * time.Millisecond}, {0.001, time.Millisecond}} {
		if got := Percentile(d, tc.p); got != tc.want {
			t.Errorf("Percentile(1..100 ms, %g) = %s, want %s", tc.p, got, tc.want)
		}
	}
	if d[0] != 100*time.Millisecond {
		t.Error("Percentile sorted its input")
	}
	if got := Percentile(nil, 0.5); got != 0 {
		t.Errorf("Percentile of nothing = %s, want 0", got)
	}
	if got := Millis(1500 * time.Microsecond); got != 1.5 {
		t.Errorf("Millis(1.5ms) = %g", got)
	}
}

// TestAtRate: every call made once, none left running when it returns, and
// a call that blocks does not hold back the next start.
func TestAtRate(t *testing.T) {
	const n = 20
	var mu sync.Mutex
	seen := map[int]int{}
	release := make(chan struct{})
	done := make(chan struct{})
	var running sync.WaitGroup
	running.Add(n)
	go func() {
		AtRate(time.Millisecond, n, func(i int) {
			mu.Lock()
			seen[i]++
			mu.Unlock()
			running.Done()
			if i == 0 {
				<-release // the first call blocks until all have started
			}
		})
		close(done)
	}()
	running.Wait() // all n started while call 0 still blocks
	select {
	case <-done:
		t.Fatal("AtRate returned while a call was still running")
	default:
	}
	close(release)
	<-done
	for i := range n {
		if seen[i] != 1 {
			t.Errorf("call %d made %d times", i, seen[i])
		}
	}
}
