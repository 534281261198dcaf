// Package benchstat is what the benchmarks share (hack/bench, the
// controllers' BenchmarkDispatch): latency percentiles, and a load that
// starts its calls at a fixed rate.
package benchstat

import (
	"math"
	"slices"
	"sync"
	"time"
)

// Percentile is the p-th (0 < p <= 1) percentile of d, by the nearest-rank
// method: the smallest value that at least p of the values do not exceed.
// 0 for no values.
func Percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[int(math.Ceil(p*float64(len(s))))-1]
}

// Millis is d in milliseconds.
func Millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// AtRate starts f(0) to f(n-1), each in a goroutine of its own, one every
// interval (an open load: a slow call does not delay the next start), and
// returns once all have returned.
func AtRate(interval time.Duration, n int, f func(i int)) {
	var wg sync.WaitGroup
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for i := range n {
		<-tick.C
		wg.Go(func() { f(i) })
	}
	wg.Wait()
}
