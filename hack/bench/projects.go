package main

import "fmt"

// projectCount is how many projects setup creates for team bench when a
// scenario that uses many runs (see main.go).
const projectCount = 24000

// projects hands the bench projects (p-00000, p-00001, ...) out to the
// scenarios in ranges that never overlap, so that no scenario triggers for a
// project on which another one left a run active (the trigger would be a
// 409).
type projects struct {
	next int
	// count is how many setup created.
	count int
}

// projectRange is a scenario's own projects.
type projectRange struct {
	first, n int
}

// take returns the next n projects.
func (p *projects) take(n int) (projectRange, error) {
	if p.next+n > p.count {
		return projectRange{}, fmt.Errorf("the scenarios need more than the %d bench projects", p.count)
	}
	r := projectRange{first: p.next, n: n}
	p.next += n
	return r, nil
}

// rest returns every project not yet taken.
func (p *projects) rest() projectRange {
	r, _ := p.take(p.count - p.next)
	return r
}

// projectName is the name of the bench project with number i.
func projectName(i int) string { return fmt.Sprintf("p-%05d", i) }

// name is the name of the range's i-th project.
func (r projectRange) name(i int) (string, error) {
	if i < 0 || i >= r.n {
		return "", fmt.Errorf("project %d of a range of %d: the scenario ran out of bench projects", i, r.n)
	}
	return projectName(r.first + i), nil
}
