package main

import (
	"sync"
	"sync/atomic"
	"time"
)

// parallel runs f(0..n-1) on workers goroutines and returns the first error.
func parallel(workers, n int, f func(i int) error) error {
	var next atomic.Int64
	var first error
	var once sync.Once
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					once.Do(func() { first = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// rate runs f on workers goroutines for 5 s and returns successful calls
// per second.
func (b *bench) rate(workers int, f func() error) float64 {
	var n atomic.Int64
	var failures atomic.Int64
	end := time.Now().Add(5 * time.Second)
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				if err := f(); err != nil {
					if failures.Add(1) == 1 {
						b.log("error: %v", err)
					}
					continue
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	return float64(n.Load()) / time.Since(start).Seconds()
}

// waitFor calls done every interval until it returns true, and reports
// false when timeout passes first.
func waitFor(timeout, interval time.Duration, done func() bool) bool {
	for deadline := time.Now().Add(timeout); ; time.Sleep(interval) {
		if done() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}
