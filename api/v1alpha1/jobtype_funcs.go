package v1alpha1

import (
	"regexp"
	"strings"
)

// JobTypePattern is the shape of a job type string (revenuecat_sync): the
// Pattern of every jobType field of the CRDs, whose markers cannot name a
// constant (TestJobTypePatternIsTheCRDs checks that they agree).
const JobTypePattern = `^[a-z]([a-z0-9_]*[a-z0-9])?$`

var jobTypePattern = regexp.MustCompile(JobTypePattern)

// MatchesJobTypePattern says whether s has the shape of a job type string
// (JobTypePattern); the CRDs also bound it to 63 bytes.
func MatchesJobTypePattern(s string) bool {
	return jobTypePattern.MatchString(s)
}

// JobTypeObjectName is the name of the JobType object for a job type string:
// object names cannot hold underscores, so revenuecat_sync lives in the
// JobType named revenuecat-sync. The CRD enforces the mapping, so a job type
// is found with one Get.
func JobTypeObjectName(jobType string) string {
	return strings.ReplaceAll(jobType, "_", "-")
}
