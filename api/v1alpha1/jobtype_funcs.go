package v1alpha1

import "strings"

// JobTypeObjectName is the name of the JobType object for a job type string:
// object names cannot hold underscores, so revenuecat_sync lives in the
// JobType named revenuecat-sync. The CRD enforces the mapping, so a job type
// is found with one Get.
func JobTypeObjectName(jobType string) string {
	return strings.ReplaceAll(jobType, "_", "-")
}
